"""ZipIt! (Stoica et al., "ZipIt! Merging Models from Different Tasks without Training",
ICLR 2024, https://arxiv.org/abs/2305.03053): merging models trained from different
initializations, as a stage in front of the usual per-tensor jobs.

Modules, in pipeline order:

- :mod:`~raymerge.zipit.spaces` (pure, headers only): the feature spaces of an architecture and how
  every tensor axis moves with them (MLP, Llama/Mistral/Qwen2);
- :mod:`~raymerge.zipit.gather` (I/O, no Ray): calibration files, model tensors, statistics of
  one calibration shard via :mod:`~raymerge.zipit.forward` (feature-exposing forward passes);
- :mod:`~raymerge.zipit.stats` (pure): additive sufficient statistics (count, sum, sum of outer
  products, float64), tree reduce, correlations with constant (dead) features handled;
- :mod:`~raymerge.zipit.matching` (pure): the ZipIt greedy matcher (alpha, beta), permutation
  (Hungarian) and identity baselines;
- :mod:`~raymerge.zipit.apply` (pure): ``W' = sum_k M_out^k W^k U_in^k`` via index_add.

The Ray side (statistics actors, reduce tasks, one matcher task per space) lives in
:mod:`raymerge.executor`; :class:`raymerge.runner.ZipStage` strings the stage together.

Memory plan for 70B-class models (Llama-3-70B: d = 8192, MLP width 28672, 80 layers, 64 query /
8 KV heads), K = 2 models:

- MLP space of one layer: C = 2 x 28672 = 57344 features, so the sum of outer products is a
  57344^2 float64 matrix (26 GB; 13 GB in float32) and the greedy matcher's two C x C working
  matrices as much again. This is per layer and layers are independent: accumulate and match one
  layer (or a few) at a time, on GPU nodes (an H100/H200 holds one layer's statistics), and free
  it before the next. 80 layers x O(C^3) greedy steps (C merges, each an O(C^2) update: ~2e14
  flops per layer) are GPU-hours, not CPU-hours. ``permute`` (Hungarian, O(n^3) on 28672^2) is
  cheaper.
- Attention spaces: 8 KV groups per layer; the unit similarity is 16 x 16: negligible. The
  statistics of the head features (8192 per model) are a 16384^2 matrix (2 GB float64) per layer.
- Residual space: one space for the whole depth, 16384^2 (2 GB float64), accumulated over every
  layer's residual output: small, but it needs features from all layers of one forward pass.
- Forward passes: each statistics actor needs both models' layers. For 70B that means pipelining
  the forward pass layer by layer (load layer l of both models, run the calibration activations
  through it, accumulate its spaces, keep only the activations), which bounds memory to one layer
  of weights plus the activations of a calibration shard.
- Matchings are small (one int64 per feature per model, ~0.5 MB per MLP layer), so the apply jobs
  get them through the object store and the per-tensor jobs stay as cheap as averaging.

What is implemented today: statistics actors that hold all K models in memory (tiny to ~1B
models), and matchers over whole spaces on CPU in float64 (C up to a few thousand in seconds:
C = 4096 takes ~1.6 s; O(C^3) beyond). Layer-streamed forward passes and GPU matching are the plan
above, not code; a 70B zip is not feasible with this implementation.
"""
