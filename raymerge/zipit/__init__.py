"""ZipIt! (Stoica et al., "ZipIt! Merging Models from Different Tasks without Training",
ICLR 2024, https://arxiv.org/abs/2305.03053): merging models trained from different
initializations, as a stage in front of the usual per-tensor jobs.

Modules, in pipeline order:

- :mod:`~raymerge.zipit.spaces` (pure, headers only): the feature spaces of an architecture and how
  every tensor axis moves with them (MLP, Llama/Mistral/Qwen2); :mod:`~raymerge.zipit.partial`
  (pure): a decoder partial zip's layout, one checkpoint per model;
- :mod:`~raymerge.zipit.budget` (pure): the statistics actor's and every matcher's memory (and a
  matcher's time), stated and checked before any tensor data is read;
- :mod:`~raymerge.zipit.stream` (I/O, no Ray): layer-streamed statistics, the stages of
  :mod:`~raymerge.zipit.stages`, through the per-layer steps of :mod:`~raymerge.zipit.forward`;
  :mod:`~raymerge.zipit.gather`: calibration files, and the all-in-memory reference statistics;
- :mod:`~raymerge.zipit.stats` (pure): additive sufficient statistics (count, sum, sum of outer
  products, float64), tree reduce, correlations with constant (dead) features handled;
- :mod:`~raymerge.zipit.matching` (pure): the ZipIt greedy matcher (alpha, beta; float32 working
  matrices, CPU or GPU), permutation (Hungarian) and identity baselines;
- :mod:`~raymerge.zipit.apply` (pure): ``W' = sum_k M_out^k W^k U_in^k`` via index_add;
- :mod:`~raymerge.zipit.outputs`: committing a decoder partial zip's K checkpoints.

The Ray side (:mod:`raymerge.execution.zipit_stage`): statistics actors, per-space reduce trees,
one matcher task per space (a GPU when the cluster has one) submitted as each space's statistics
are reduced, and ``ZipStage``, which strings the stage together.

Memory, as implemented (details, the 70B figures and what is not built: ``docs/zipit.md``):

- a statistics actor holds one layer of the K models (float32 copies), its calibration shards'
  activations, one batch's temporaries, and the statistics of the layer's spaces plus the
  residual space's (float64), which accumulate down the stack; it reads every layer of every
  model once. Llama-3-70B, K = 2, 512 x 2048 calibration tokens in 64 shards: 77 GB per actor,
  278 GB read per actor;
- one matcher task holds its space's statistics and correlation (float64 [C, C]) and, for zipit,
  three float32 [U, U] matrices: 92 GB for a 70B MLP space (C = 57344), 7.5 GB for the residual;
- matchings are small (one int64 per feature per model), so the apply jobs stay as cheap as
  averaging.

Measured here (2 shared CPU cores, no GPU): the greedy matcher's time per space (constants in
:mod:`~raymerge.zipit.budget`); a ~1B zip from S3 whose actor peak RSS is flat from 4 to 16
layers (``benchmarks/README.md``). A 70B zip was not run: its figures come from the planner and
``benchmarks/zipit_cost.py``.
"""
