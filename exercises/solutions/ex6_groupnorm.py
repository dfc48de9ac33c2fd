"""Exercise 6, a solution: the project's own function."""

from difflora import head_norm as head_groupnorm  # noqa: F401
