"""Content neighbours: each item's nearest trained items by content, their ID embeddings as a modality, and
without IDs their vectors for the items that never occurred in training."""

import pytest
import torch

from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.fusion import AttentionFusion
from mmrec_lightning.towers.content_neighbours import ContentNeighbours
from mmrec_lightning.towers.item import ItemTower

# six items on a circle of text directions (item 5 has no content at all), one image direction each
TEXT = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [0.1, 0.9], [0.0, 0.0]])
IMAGE = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
TRAINED = torch.tensor([True, True, False, True, True, True])


def test_neighbours_are_the_most_similar_trained_items_never_the_item_itself():
    neighbours = ContentNeighbours(k=2, image_weight=0.0)  # text similarity alone
    neighbours.build({"text": TEXT, "image": IMAGE}, TRAINED)
    index = neighbours.index.tolist()
    assert sorted(index[0]) == [1, 4]  # item 2 is closer to 0 than 4 is, but it never occurred in training
    assert sorted(index[2]) == [0, 1]  # the cold item 2 gets the trained items its content resembles
    assert sorted(index[3]) == [1, 4] and 3 not in index[3]
    assert neighbours.available.tolist() == [True, True, True, True, True, False]  # item 5 has no content


def test_the_image_weight_mixes_the_two_similarities():
    neighbours = ContentNeighbours(k=1, image_weight=1.0)  # image similarity alone
    neighbours.build({"text": TEXT, "image": IMAGE}, torch.tensor([True, False, False, True, True, False]))
    assert neighbours.index[2].tolist() == [3]  # same image direction as item 2; by text it would be item 0


def test_the_modality_vector_is_the_mean_of_the_neighbours_embeddings_and_new_items_have_none():
    neighbours = ContentNeighbours(k=2, image_weight=0.0)
    neighbours.build({"text": TEXT}, TRAINED)
    embedding = torch.arange(12, dtype=torch.float32).view(6, 2)
    vectors, available = neighbours(torch.tensor([2, -1]), embedding)
    torch.testing.assert_close(vectors[0], (embedding[0] + embedding[1]) / 2)
    assert available.tolist() == [True, False]


def test_the_item_tower_gives_a_cold_item_its_neighbours_vector_and_the_gradient_reaches_them(tmp_path):
    from mmrec_lightning.features.encoder import ItemFeatures
    from mmrec_lightning.features.files import feature_file, save_features

    save_features(feature_file(tmp_path, "text"), TEXT.numpy())
    tower = ItemTower(6, 2, AttentionFusion, text_encoder=ItemFeatures(str(feature_file(tmp_path, "text"))),
                      neighbours=ContentNeighbours(k=2, image_weight=0.0))  # fmt: skip
    assert tower.modalities == ["text", "id", "neighbours"]
    tower.build_neighbours(TRAINED)
    encoded = tower({"item_ids": torch.tensor([2]), "id_mask": torch.tensor([False])})
    assert encoded.available.tolist() == [[True, False, True]]
    encoded.vectors.sum().backward()
    touched = tower.item_embedding.weight.grad.abs().sum(1) > 0
    assert touched.tolist() == [True, True, False, False, False, False]  # only the neighbours' rows


def _text_tower(tmp_path, **options) -> ItemTower:
    from mmrec_lightning.features.encoder import ItemFeatures
    from mmrec_lightning.features.files import feature_file, save_features

    save_features(feature_file(tmp_path, "text"), TEXT.numpy())
    return ItemTower(6, 3, AttentionFusion, text_encoder=ItemFeatures(str(feature_file(tmp_path, "text"))), **options)


def test_without_item_ids_an_untrained_item_is_placed_at_its_neighbours_mean_vector(tmp_path):
    torch.manual_seed(0)
    tower = _text_tower(tmp_path, use_item_id=False, neighbours=ContentNeighbours(k=2, image_weight=0.0))
    assert tower.modalities == ["text"]  # no "neighbours" modality: nothing is fused from them
    tower.build_neighbours(TRAINED)
    tower.eval()
    ids = torch.arange(6)
    with torch.no_grad():
        placed = tower({"item_ids": ids}).vectors
        tower.neighbours = None
        own = tower({"item_ids": ids}).vectors
    assert torch.equal(placed[TRAINED], own[TRAINED])  # trained items keep their own vectors
    theirs = own[[0, 1]]  # item 2 never occurred in training; by text its nearest trained items are 0 and 1
    direction = torch.nn.functional.normalize(torch.nn.functional.normalize(theirs, dim=1).mean(0), dim=0)
    torch.testing.assert_close(placed[2], direction * theirs.norm(dim=1).mean())


def test_neighbours_need_precomputed_features_and_without_item_ids_only_them(tmp_path):
    from mmrec_lightning.encoders.image import TimmImageEncoder

    with pytest.raises(ConfigurationError, match="precomputed features"):
        ItemTower(6, 2, AttentionFusion, use_item_id=True, neighbours=ContentNeighbours())
    text = _text_tower(tmp_path).text_encoder
    image = TimmImageEncoder("test_efficientnet", image_size=32)  # encodes images: its neighbours' vectors need them
    ItemTower(6, 2, AttentionFusion, image, text, use_item_id=True, neighbours=ContentNeighbours())
    with pytest.raises(ConfigurationError, match="every encoder"):
        ItemTower(6, 2, AttentionFusion, image, text, use_item_id=False, neighbours=ContentNeighbours())


def test_alignment_pairs_each_trained_items_content_vector_with_its_id_vector(tmp_path):
    from mmrec_lightning.features.encoder import ItemFeatures
    from mmrec_lightning.features.files import feature_file, save_features
    from mmrec_lightning.heads import ContentAlignmentHead
    from mmrec_lightning.models import MultimodalRecommender

    save_features(feature_file(tmp_path, "text"), TEXT.numpy())
    head = ContentAlignmentHead(temperature=0.5, learnable_temperature=False)
    text_features = ItemFeatures(str(feature_file(tmp_path, "text")))
    model = MultimodalRecommender(num_users=3, num_items=6, text_encoder=text_features, embed_dim=2,
                                  alignment_head=head, category_head=None, top_k=[5])  # fmt: skip
    items = torch.arange(6)
    encoded = model.item_tower({"item_ids": items, "id_mask": TRAINED})
    text, ids = model.item_tower.text_projection(TEXT), model.item_tower.item_embedding(items)
    kept = torch.tensor([0, 1, 3, 4])  # item 2 never occurred in training, item 5 has no content
    torch.testing.assert_close(model._alignment_loss(encoded), head.loss(text[kept], ids[kept]))


def test_alignment_needs_the_item_id_and_another_modality():
    from mmrec_lightning.heads import ContentAlignmentHead
    from mmrec_lightning.models import MultimodalRecommender

    with pytest.raises(ConfigurationError, match="alignment_head needs use_item_id"):
        MultimodalRecommender(num_users=3, num_items=6, alignment_head=ContentAlignmentHead(), top_k=[5])
