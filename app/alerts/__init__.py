"""Alert rules: conditions the workers evaluate, firings, and notifications of them."""
