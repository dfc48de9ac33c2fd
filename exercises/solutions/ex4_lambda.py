"""Exercise 4, a solution: the schedule and lambda are the project's own functions."""

import math

from difflora import lambda_init_schedule as lambda_init
from difflora import reparam_lambda as lam


def negative_threshold(lq1, lk1, init):
    # exp(lq1.lk1) + init - exp(s) < 0  <=>  s > log(exp(lq1.lk1) + init); exp(s) > 0, so no crossing if that is <= 0
    c = math.exp(float(lq1 @ lk1)) + init
    return math.log(c) if c > 0 else -math.inf
