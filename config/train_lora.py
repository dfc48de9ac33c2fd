# The LoRA baseline at DiffLoRA's parameter budget: LoRA on Q and K at twice the rank has
# exactly as many adapter parameters as DiffLoRA (both terms) at rank 16, grouped-query
# attention or not: 1,843,200 on SmolLM2-135M, 1,179,648 on gpt2.
out_dir = "out-needle-lora"
method = "lora"
lora_targets = "q,k"
lora_rank = 32
lora_alpha = 64.0
