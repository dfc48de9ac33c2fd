# The class-sized lab's needle evaluation: the two hard kinds at 8 needles, 1,024 tokens, 4
# examples at each of 3 depths: a third of config/lab/eval.py's cells, the ones that separate
# LoRA and DiffLoRA's two initialisations (docs/lab.md, "The lab in one class").
#   python analysis/eval_needle.py config/lab/class_eval.py --models=smollm2,out-class/lora,out-class/difflora,out-class/preserve
kinds = "multikey,multivalue"
needles = "8"
lengths = "1024"
depths = "0.1,0.5,0.9"
examples = 4
attn_examples = 1
