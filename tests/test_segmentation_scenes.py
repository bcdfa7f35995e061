"""The synthetic segmentation scenes (tools/segmentation_scenes.py) and the tiny segmenter trained on them
(tools/tiny_segmenter.py): deterministic per seed, VOC-style masks, and a model that has learnt the shapes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from segmentation_scenes import CLASSES, IGNORE, main, scene, write_scenes
from tiny_segmenter import build, train


def test_a_scene_is_a_function_of_its_seed() -> None:
    image, label = scene((7, 3))
    again_image, again_label = scene((7, 3))
    other_image, other_label = scene((7, 4))
    assert image.dtype == label.dtype == np.uint8 and image.shape == (128, 128, 3) and label.shape == (128, 128)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    assert not np.array_equal(image, other_image) and not np.array_equal(label, other_label)


def test_labels_are_classes_with_an_ignore_border_that_can_be_switched_off() -> None:
    for index in range(20):
        _, label = scene((0, index))
        _, plain = scene((0, index), border=0)
        assert set(np.unique(label)) <= {*range(len(CLASSES)), IGNORE} and IGNORE in label
        assert set(np.unique(plain)) <= set(range(len(CLASSES))) and plain.max() > 0  # at least one object
        # the border only hides pixels; the others keep their class, and it lies where classes meet
        kept = label != IGNORE
        assert np.array_equal(label[kept], plain[kept])
        padded = np.pad(plain, 1, mode="edge")
        neighbours = [padded[1 + dy:129 + dy, 1 + dx:129 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        meets = np.any([n != plain for n in neighbours], axis=0)
        assert np.array_equal(~kept, meets)


def test_every_shape_class_comes_in_many_colours() -> None:
    """Colour alone must not give the class away: each class's objects span the colour cube."""
    colours: dict[int, list[np.ndarray]] = {cls: [] for cls in range(1, len(CLASSES))}
    for index in range(60):
        image, label = scene((1, index), border=0)
        for cls in colours:
            if (label == cls).sum() > 50:
                colours[cls].append(np.median(image[label == cls], axis=0))
    for cls, seen in colours.items():
        assert len(seen) >= 10, CLASSES[cls]
        assert np.ptp(np.array(seen), axis=0).min() > 150, CLASSES[cls]  # every channel from dark to bright


def test_write_scenes_writes_voc_indexed_masks(tmp_path) -> None:
    names = write_scenes(tmp_path / "a", 3, seed=5)
    write_scenes(tmp_path / "b", 3, seed=5)
    assert (tmp_path / "a" / "classes.txt").read_text().splitlines() == list(CLASSES)
    for index, name in enumerate(names):
        image_file, mask_file = tmp_path / "a" / "images" / f"{name}.png", tmp_path / "a" / "masks" / f"{name}.png"
        for file in (image_file, mask_file):
            assert file.read_bytes() == (tmp_path / "b" / file.parent.name / file.name).read_bytes()
        expected_image, expected_label = scene((5, index))
        with Image.open(image_file) as image, Image.open(mask_file) as mask:
            assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected_image)
            assert mask.mode == "P" and np.array_equal(np.asarray(mask), expected_label)
            palette = mask.getpalette()
        # VOC's colours: background black, aeroplane (1) dark red, bicycle (2) dark green, bird (3) olive,
        # person (15) pink, void (255) cream
        for value, rgb in {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
                           255: (224, 224, 192)}.items():
            assert tuple(palette[3 * value:3 * value + 3]) == rgb


def test_the_command_line_writes_count_scenes(tmp_path, capsys) -> None:
    main([str(tmp_path), "--count", "2", "--seed", "4", "--border", "0"])
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["scene0000.png", "scene0001.png"]
    with Image.open(tmp_path / "masks" / "scene0001.png") as mask:
        assert np.array_equal(np.asarray(mask), scene((4, 1), border=0)[1])
    assert "wrote 2 scenes" in capsys.readouterr().out


def test_the_segmenter_returns_logits_at_the_input_size_with_named_stages() -> None:
    model = build().eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 128, 128)).shape == (2, len(CLASSES), 128, 128)
        assert model(torch.zeros(1, 3, 96, 160)).shape == (1, len(CLASSES), 96, 160)
    names = dict(model.named_modules())
    assert {"encoder.stage1", "encoder.stage2", "encoder.stage3", "decoder.fuse"} <= set(names)


def test_training_is_deterministic_given_the_seed() -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return train(None, epochs=1, seed=seed, scenes=48).state_dict()  # three steps

    first, second, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
