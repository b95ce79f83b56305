"""Core plugins: data (tinyshakespeare, mnist1d), models (gpt, mlp, cnn1d), adamw, cross_entropy."""
