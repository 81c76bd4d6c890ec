"""Research lab of hf-sparse-attn: proxy training, evaluation, benchmarks, studies. Imports the library; the library never imports it."""
