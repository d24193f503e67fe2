"""Development tools: the synthetic generator, the MovieLens import, the local broker and
synthetic feedback."""
