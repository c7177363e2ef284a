"""Classification metrics: the confusion matrix and the scores read from it, checked against values worked out by
hand (zero divisions included) and, where scikit-learn is installed, against its metrics on random data."""

from __future__ import annotations

import pytest
import torch

from rnnkit.metrics import classification_metrics, confusion_matrix

# A 3-class example, N = 10.
#   targets      0 0 0 0 1 1 1 2 2 2
#   predictions  0 0 1 2 1 1 0 2 2 1
# confusion (rows true, columns predicted):
#        0  1  2  | row sum
#   0 [  2, 1, 1] | 4
#   1 [  1, 2, 0] | 3
#   2 [  0, 1, 2] | 3
#   col  3  4  3
# accuracy  = trace / N = 6 / 10
# recall    = 2/4, 2/3, 2/3          (diagonal / row sums)
# precision = 2/3, 2/4, 2/3          (diagonal / column sums)
# F1 = 2 TP / (2 TP + FP + FN):  0: 4 / (4 + 1 + 2) = 4/7,  1: 4 / (4 + 2 + 1) = 4/7,  2: 4 / (4 + 1 + 1) = 2/3
# macro-F1 = (4/7 + 4/7 + 2/3) / 3 = (12 + 12 + 14) / 63 = 38/63
TARGETS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTIONS = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(TARGETS, PREDICTIONS, 3)
    assert conf.dtype == torch.int64 and conf.shape == (3, 3)
    assert conf.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    # the input dtype does not matter, and a wider matrix has zero rows and columns for the classes not seen
    wide = confusion_matrix(TARGETS.int(), PREDICTIONS.to(torch.uint8), 4)
    assert wide.tolist() == [[2, 1, 1, 0], [1, 2, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]


def test_confusion_matrix_is_not_symmetric_in_its_arguments():
    # row = true class: one example of class 0 predicted as 1
    assert confusion_matrix(torch.tensor([0]), torch.tensor([1]), 2).tolist() == [[0, 1], [0, 0]]
    assert confusion_matrix(torch.tensor([1]), torch.tensor([0]), 2).tolist() == [[0, 0], [1, 0]]


def test_metrics_by_hand():
    m = classification_metrics(confusion_matrix(TARGETS, PREDICTIONS, 3))
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["recall"] == pytest.approx([2 / 4, 2 / 3, 2 / 3])
    assert m["precision"] == pytest.approx([2 / 3, 2 / 4, 2 / 3])
    assert m["f1"] == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    assert m["macro_f1"] == pytest.approx(38 / 63)
    assert isinstance(m["accuracy"], float) and isinstance(m["macro_f1"], float)


def test_a_class_never_predicted():
    # targets 0 0 1 2, predictions 0 0 0 0: confusion [[2, 0, 0], [1, 0, 0], [1, 0, 0]]
    # recall 1, 0, 0; precision 2/4, 0 (0/0 -> 0), 0 (0/0 -> 0)
    # F1 class 0 = 2 * 1/2 * 1 / (1/2 + 1) = 2/3; classes 1, 2: P + R = 0 -> 0
    # all three occur in the targets: macro-F1 = (2/3 + 0 + 0) / 3 = 2/9
    m = classification_metrics(confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 0, 0]), 3))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["recall"] == [1.0, 0.0, 0.0]
    assert m["precision"] == [0.5, 0.0, 0.0]
    assert m["f1"] == pytest.approx([2 / 3, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx(2 / 9)


def test_a_class_never_present_and_one_never_seen():
    # 4 classes; targets 0 0 1 1, predictions 0 2 1 1: confusion rows [1, 0, 1, 0], [0, 2, 0, 0], then zeros
    # class 0: R 1/2, P 1/1, F1 2 * 1 * 1/2 / (3/2) = 2/3;  class 1: R 1, P 1, F1 1
    # class 2: predicted once, never true: R 0 (0/0 -> 0), P 0/1 = 0, F1 0, and it counts in macro-F1
    # class 3: in neither targets nor predictions: every score 0, and it is left out of macro-F1
    # macro-F1 = (2/3 + 1 + 0) / 3 = 5/9 (not / 4 = 5/12)
    m = classification_metrics(confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1]), 4))
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["recall"] == [0.5, 1.0, 0.0, 0.0]
    assert m["precision"] == [1.0, 1.0, 0.0, 0.0]
    assert m["f1"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx(5 / 9)


def test_all_right_and_all_wrong():
    right = classification_metrics(confusion_matrix(torch.tensor([2, 0, 1]), torch.tensor([2, 0, 1]), 5))
    assert right["accuracy"] == 1.0 and right["macro_f1"] == 1.0 and right["f1"] == [1.0, 1.0, 1.0, 0.0, 0.0]
    # targets 0 1, predictions 1 0: every class present, every F1 0
    wrong = classification_metrics(confusion_matrix(torch.tensor([0, 1]), torch.tensor([1, 0]), 2))
    assert wrong["accuracy"] == 0.0 and wrong["macro_f1"] == 0.0 and wrong["recall"] == [0.0, 0.0]


def test_no_examples():
    m = classification_metrics(torch.zeros(3, 3, dtype=torch.long))
    assert m == {"accuracy": 0.0, "macro_f1": 0.0, "n": 0, "recall": [0.0] * 3, "precision": [0.0] * 3, "f1": [0.0] * 3}


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scikit_learn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(seed)
    C = 6
    n = int(torch.randint(5, 60, (1,), generator=g))
    # targets from classes 0..3 only, predictions from 0..4 mostly right: class 4 is only predicted, 5 never seen
    targets = torch.randint(0, 4, (n,), generator=g)
    guesses = torch.randint(0, 5, (n,), generator=g)
    predictions = torch.where(torch.rand(n, generator=g) < 0.6, targets, guesses)
    m = classification_metrics(confusion_matrix(targets, predictions, C))
    y, p = targets.numpy(), predictions.numpy()
    present = sorted(set(y.tolist()) | set(p.tolist()))
    assert 5 not in present
    assert m["n"] == n
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    macro = sklearn_metrics.f1_score(y, p, labels=present, average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(macro)
    every = list(range(C))
    for name, score in [("recall", "recall_score"), ("precision", "precision_score"), ("f1", "f1_score")]:
        expected = getattr(sklearn_metrics, score)(y, p, labels=every, average=None, zero_division=0)
        assert m[name] == pytest.approx(expected.tolist()), name


def test_confusion_matrix_rejects_ids_outside_the_classes():
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\), got values in \[0, 3\]"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([-1, 1]), torch.tensor([0, 1]), 3)
