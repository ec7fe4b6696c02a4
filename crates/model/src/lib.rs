//! Model architectures (llama, qwen2, qwen3, gemma3, qwen35): weights and forward passes.
//! Empty for now: the CPU engine issue fills it.
