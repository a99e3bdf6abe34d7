"""`laion-pipe evaluate`: judge a curation run by the model its data trains.

`prompts` gathers evaluation prompts (held-out captions training never saw, or a file) and the
held-out real images; `metrics` computes CLIP score, top-1 prompt retrieval and FD-CLIP from CLIP
embeddings; `stage` samples the model, scores the images and writes RUN/eval/{model}/.
"""
