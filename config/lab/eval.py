# The SmolLM2 lab's needle evaluation: the three kinds at 4 and 8 needles, 1,024 tokens (four
# times the 256 the fine-tunes train on), 4 examples at each of 3 depths per row; the same
# examples for every model.
#   python analysis/eval_needle.py config/lab/eval.py --models=smollm2 --out=results/lab/base.png
kinds = "single,multikey,multivalue"
needles = "4,8"
lengths = "1024"
depths = "0.1,0.5,0.9"
examples = 4
attn_examples = 1
