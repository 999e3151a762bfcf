; model: mlp_small
; dump-after: plan_memory batch=2
# A ReLU MLP is one GEMM kernel per layer, bias and ReLU in the epilogue.
# check-count: 2 matmul ->
# check-not: elementwise
# expect:
# | buffers:
# |   b0 result f32[2, 5] 'logits'
# |   b1 arena@0 f32[2, 16] 'fc1/maximum_0'
# |   b2 input f32[2, 12] 'x'
# |   b3 variable f32[12, 16] 'fc1/weight'
# |   b4 variable f32[16] 'fc1/bias'
# |   b5 variable f32[16, 5] 'fc2/weight'
# |   b6 variable f32[5] 'fc2/bias'
# | kernels:
# |   k0 matmul -> b1  (fc1/matmul_0, fc1/add_0, fc1/maximum_0)
# |     batch [] m=2 n=16 k=12; a b2+0 strides [12, 1]; b b3+0 strides [16, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b4[i1]
# |     %2 = add %0, %1
# |     %3 = const 0:f32
# |     %4 = maximum %2, %3  <- result
# |   k1 matmul -> b0  (fc2/matmul_0, logits)
# |     batch [] m=2 n=5 k=16; a b1+0 strides [16, 1]; b b5+0 strides [5, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b6[i1]
# |     %2 = add %0, %1  <- result
# | outputs: b0
# | memory: arena 128 B, liveness lower bound 128 B, unplanned 128 B, results 40 B
