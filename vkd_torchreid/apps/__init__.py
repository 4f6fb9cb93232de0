"""Applications built on the library: the paper's experiment configs, studies, the demo."""
