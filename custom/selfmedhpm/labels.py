# Copyright (c) 2026 SelfMedHPM bundles contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Label sets of the segmentation bundle: BTCV's 14 classes, TransUNet's 8-organ subset, and their checks.

A label set is a list of class names whose index is the label value, background first. The segmentation bundle
takes it from its top-level ``class_names`` key (``num_classes`` is its length), so another label set (e.g. a
whole-body one) is a short config override; ``python -m selfmedhpm_tools.label_metadata`` puts the same names
into ``metadata.json`` (``network_data_format.outputs.pred``), where MONAI Label reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "BTCV_CLASSES",
    "TRANSUNET_8_ORGANS",
    "LabelSetError",
    "check_label_set",
    "organ_names",
    "subset_indices",
]

BTCV_CLASSES: tuple[str, ...] = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
)  # fmt: skip
"""BTCV's labels: index = label value (0 background, 1 spleen, ..., 13 left adrenal gland)."""

TRANSUNET_8_ORGANS: dict[int, str] = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 6: "liver", 7: "stomach", 8: "aorta",
    11: "pancreas",
}  # fmt: skip
"""The 8 BTCV organs averaged by TransUNet's protocol (Chen et al., 2021), by BTCV label value."""


class LabelSetError(ValueError):
    """A label set that the bundle cannot use; the message says what is wrong."""


def check_label_set(class_names: Sequence[str], num_classes: int | None = None) -> list[str]:
    """Checks a label set: at least two classes, background first, unique non-empty names, and ``num_classes``
    (when given) equal to the number of names. Returns the names as a list.

    Args:
        class_names: class names by label value, background first.
        num_classes: the bundle's ``num_classes``, checked against ``len(class_names)``.

    Examples::

        >>> check_label_set(["background", "liver"], 2)
        ['background', 'liver']
        >>> try:
        ...     check_label_set(["background", "liver"], 3)
        ... except LabelSetError as e:
        ...     print(str(e).split(";")[0])
        num_classes is 3 but class_names has 2 names (background, liver)
    """
    names = [str(n) for n in class_names]
    if num_classes is not None and int(num_classes) != len(names):
        raise LabelSetError(
            f"num_classes is {num_classes} but class_names has {len(names)} names ({', '.join(names)}); "
            "set both keys together (one name per label value, background first)."
        )
    if len(names) < 2:
        raise LabelSetError(f"class_names needs background and at least one class, got {names}.")
    if names[0].lower() != "background":
        raise LabelSetError(f"class_names[0] must be 'background' (label value 0), got {names[0]!r}.")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated or any(not n.strip() for n in names):
        raise LabelSetError(f"class names must be unique and non-empty; duplicated: {duplicated}, names: {names}.")
    return names


def organ_names(class_names: Sequence[str]) -> list[str]:
    """The foreground class names (label values 1..N-1), in label order: the columns of the evaluation reports.

    Examples::

        >>> organ_names(BTCV_CLASSES)[:2], len(organ_names(BTCV_CLASSES))
        (['spleen', 'right kidney'], 13)
    """
    return check_label_set(class_names)[1:]


def subset_indices(class_names: Sequence[str], subset: Sequence[str] | Mapping[int, str]) -> list[int] | None:
    """Positions in :func:`organ_names` (0-based, background excluded) of the organs of ``subset``, or None when one
    of them is not in the label set (the subset's mean is then not defined for this label set).

    Examples::

        >>> subset_indices(BTCV_CLASSES, TRANSUNET_8_ORGANS)
        [0, 1, 2, 3, 5, 6, 7, 10]
        >>> subset_indices(["background", "liver"], TRANSUNET_8_ORGANS) is None
        True
    """
    organs = organ_names(class_names)
    wanted = list(subset.values()) if isinstance(subset, Mapping) else list(subset)
    if any(name not in organs for name in wanted):
        return None
    return [organs.index(name) for name in wanted]
