# The paper's main baseline: LoRA r=8 on every linear map of every block (GPT-2: q, k, v,
# attention output, MLP in and out: 1,327,104 adapter parameters on gpt2, 1.13x DiffLoRA's at
# rank 16; Llama: q, k, v, o, gate, up, down).
out_dir = "out-needle-lora-all"
method = "lora"
lora_targets = "all"
lora_rank = 8
lora_alpha = 16.0
