"""Exercise 5: the fused path. Handout: exercises/handouts/ex5_fused.md.
Grader: python -m pytest exercises/tests/test_ex5_fused.py
Then measure: python exercises/ex5_fused.py"""

import torch
from torch.nn import functional as F


def diff_attention_fused(q1, k1, q2, k2, v, lam):
    """(A1 - lam A2) V = A1 V - lam (A2 V), computed with ONE call of F.scaled_dot_product_attention
    over 2H stacked heads (stack q1 and q2, k1 and k2, v and v along the head dimension), then
    the subtraction. q (B, H, Tq, d), k and v (B, H, Tk, d), Tq <= Tk: the query rows are the last
    Tq positions, as in exercise 1 (is_causal=True is right only when Tq == Tk; otherwise pass a
    boolean attn_mask). Returns (B, H, Tq, d)."""
    raise NotImplementedError("exercise 5: diff_attention_fused")


if __name__ == "__main__":
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), os.path.join(here, "helpers")]  # model.py, difflora.py; measure.py
    if sys.argv[1:] == ["--solutions"]:  # the numbers of the instructor's key
        sys.path.insert(0, os.path.join(here, "solutions"))
    from ex3_diff_attention import diff_attention_explicit
    from ex5_fused import diff_attention_fused
    from measure import saved_for_backward_mb
    print("kept for backward by one layer's differential attention, B=1, H=12, d=64")
    print(f"{'T':>6}{'explicit MB':>14}{'fused MB':>12}")
    for T in (128, 256, 512, 1024, 2048):
        try:
            explicit, fused = (saved_for_backward_mb(f, T) for f in (diff_attention_explicit, diff_attention_fused))
        except NotImplementedError as e:
            raise SystemExit(f"error: {e} is not written yet (see its handout)") from None
        print(f"{T:>6}{explicit:>14.1f}{fused:>12.1f}")
