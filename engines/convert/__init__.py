"""convert: Hugging Face checkpoint → validated model directory. Needs the `convert` extra (torch)."""
