; model: mlp_784_512_512_10
; dump-after: plan_memory batch=2
# 784-512-512-10 ReLU MLP, batch 2: GEMM+bias+relu twice, GEMM+bias (the kernel program after planning; was tests/golden/mlp_784_512_512_10.txt)
# check-count: 3 matmul ->
# check-not: elementwise
# expect:
# | buffers:
# |   b0 result f32[2, 10] 'logits'
# |   b1 arena@4096 f32[2, 512] 'fc2/maximum_0'
# |   b2 arena@0 f32[2, 512] 'fc1/maximum_0'
# |   b3 input f32[2, 784] 'x'
# |   b4 variable f32[784, 512] 'fc1/weight'
# |   b5 variable f32[512] 'fc1/bias'
# |   b6 variable f32[512, 512] 'fc2/weight'
# |   b7 variable f32[512] 'fc2/bias'
# |   b8 variable f32[512, 10] 'fc3/weight'
# |   b9 variable f32[10] 'fc3/bias'
# | kernels:
# |   k0 matmul -> b2  (fc1/matmul_0, fc1/add_0, fc1/maximum_0)
# |     batch [] m=2 n=512 k=784; a b3+0 strides [784, 1]; b b4+0 strides [512, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b5[i1]
# |     %2 = add %0, %1
# |     %3 = const 0:f32
# |     %4 = maximum %2, %3  <- result
# |   k1 matmul -> b1  (fc2/matmul_0, fc2/add_0, fc2/maximum_0)
# |     batch [] m=2 n=512 k=512; a b2+0 strides [512, 1]; b b6+0 strides [512, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b7[i1]
# |     %2 = add %0, %1
# |     %3 = const 0:f32
# |     %4 = maximum %2, %3  <- result
# |   k2 matmul -> b0  (fc3/matmul_0, logits)
# |     batch [] m=2 n=10 k=512; a b1+0 strides [512, 1]; b b8+0 strides [10, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b9[i1]
# |     %2 = add %0, %1  <- result
# | outputs: b0
# | memory: arena 8192 B, liveness lower bound 8192 B, unplanned 8192 B, results 80 B
