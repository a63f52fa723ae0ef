"""Compare clipadapt's corruptions with the reference package ``imagecorruptions`` 1.1.2.

Run it in a throwaway environment where the reference runs (it needs OpenCV and
scikit-image, and two shims for NumPy 2 / scikit-image >= 0.21 that this script applies to
the package's module at run time: ``np.float_`` and ``gaussian(multichannel=...)``)::

    python -m venv /tmp/icvenv
    /tmp/icvenv/bin/pip install numpy scipy scikit-image opencv-python-headless pillow setuptools
    /tmp/icvenv/bin/pip install --no-deps imagecorruptions==1.1.2
    PYTHONPATH=src /tmp/icvenv/bin/python benchmarks/corruption_reference_check.py IMAGE...
    ... --corruptions spatter,frost --seed 1   # some corruptions, other draws

Both sides draw their random numbers from one legacy ``RandomState`` seeded alike (the
package from NumPy's global state), so a corruption whose draws come in the same order
must agree up to float rounding; ``impulse_noise`` (scikit-image draws from its own
generator) is compared by the fraction of changed values instead. Prints, per corruption
and severity, the mean and max absolute difference in grey levels (0-255) and writes them
as JSON when ``--out`` is given. Nothing is copied from the package into clipadapt.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image

from clipadapt.corruptions import CANVAS, CORRUPTIONS, SEVERITIES, corrupt
from clipadapt.imageops import resize_center_crop


class LegacyRng:
    """A ``Generator``-like face on ``RandomState`` (the reference calls ``randint``)."""

    def __init__(self, state: np.random.RandomState) -> None:
        self.state = state

    def integers(self, low, high=None, size=None):
        return self.state.randint(low, high, size=size)

    def __getattr__(self, name: str):
        return getattr(self.state, name)


def reference():
    import skimage.filters

    np.float_ = np.float64  # removed in NumPy 2; the package's fog uses it
    import imagecorruptions.corruptions as module

    plain = skimage.filters.gaussian

    def gaussian(image, sigma=1, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return plain(image, sigma=sigma, **kwargs)

    module.gaussian = gaussian
    import imagecorruptions

    return imagecorruptions.corrupt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS), help="comma-separated")
    args = parser.parse_args()
    theirs = reference()
    rows = []
    for path in args.images:
        with Image.open(path) as image:
            pixels = np.asarray(resize_center_crop(image.convert("RGB"), CANVAS))
        for name in args.corruptions.split(","):
            for severity in SEVERITIES:
                np.random.seed(args.seed)
                expected = theirs(pixels, severity=severity, corruption_name=name)
                ours = corrupt(pixels, name, severity, LegacyRng(np.random.RandomState(args.seed)))
                diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
                row = {
                    "image": path,
                    "corruption": name,
                    "severity": severity,
                    "mean_abs_diff": float(diff.mean()),
                    "max_abs_diff": int(diff.max()),
                    "changed_fraction": [
                        float((ours != pixels).mean()),
                        float((expected != pixels).mean()),
                    ],
                }
                rows.append(row)
                print(
                    f"{name:18s} s{severity} mean|d|={row['mean_abs_diff']:.3f} "
                    f"max|d|={row['max_abs_diff']:3d} changed ours/ref="
                    f"{row['changed_fraction'][0]:.3f}/{row['changed_fraction'][1]:.3f}"
                )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
