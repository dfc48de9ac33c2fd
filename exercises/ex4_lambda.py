"""Exercise 4: lambda, its reparameterisation and its depth schedule. Handout: exercises/handouts/ex4_lambda.md.
Grader: python -m pytest exercises/tests/test_ex4_lambda.py"""

import math

import torch


def lambda_init(depth):
    """lambda_init(depth) = 0.8 - 0.6 exp(-0.3 depth), depth counted from 0 (a float)."""
    raise NotImplementedError("exercise 4: lambda_init")


def lam(lq1, lk1, lq2, lk2, init):
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + init, a 0-dim tensor that carries gradients to
    the four vectors (each (d,))."""
    raise NotImplementedError("exercise 4: lam")


def negative_threshold(lq1, lk1, init):
    """The value t of the dot product lq2 . lk2 at which lambda crosses 0: lambda < 0 exactly
    when lq2 . lk2 > t. A float; -math.inf when lambda is negative whatever lq2 . lk2 is."""
    raise NotImplementedError("exercise 4: negative_threshold")
