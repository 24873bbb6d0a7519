"""Quantisers that turn trained weights into compact integer tensors, and the export stages around them.

Loading side (ships with the scorer): `layout` (plans, stream encodings, dequantisation).
Writing side: `plan` (per-tensor plans from roles), `intx` (round-to-nearest intN, clip rules,
`fake_quantize`), `gptq` (Hessians, calibration, GPTQ), `quantize` (the quantise stage), `lqer`
(low-rank corrections), `pack` (streams, codecs), `fit` (bits and pruning to fit the budget),
`export` (the drivers), and `int8` (the challenge baseline's export, kept as the reference).
"""
