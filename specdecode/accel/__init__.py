"""The accelerated tier: what makes the reference engine fast on a GPU, behind one seam.

* `runner.ModelRunner`: the Step seam (new_cache / prefill / forward) with fused layers
  (fused.py), torch.compile and the Triton decode kernels (kernels.py); fixed shapes and
  pooled cache sizes so compiled and captured code is reused;
* `rounds.CapturedRounds`: a whole round (draft steps, verify, acceptance, cache commits)
  captured once per shape as one CUDA graph, launched once per round, with one host
  synchronisation: the counts the engine reads; the round's acceptance and commit, and greedy
  picks over the vocabulary, as Triton kernels of their own (glue.py);
* `execution.resolve_execution`: which of these a model runs with on a device, and why,
  decided once where settings meet the device.

Nothing under decoding/ imports this package; the reference engine runs without it.
"""
