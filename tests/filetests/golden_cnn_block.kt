; model: cnn_block
; dump-after: plan_memory batch=2
; freeze
# conv3x3+BN+ReLU, residual block, avg pool, global pool, linear; batch 2, frozen (the kernel program after planning; was tests/golden/cnn_block.txt)
# check-count: 3 conv2d ->
# check-not: rsqrt
# expect:
# | buffers:
# |   b0 result f32[2, 4] 'head/matmul_0'
# |   b1 arena@0 f32[2, 8, 1, 1] 'mul_0'
# |   b2 arena@2304 f32[2, 8, 1, 1] 'reduce_sum_0'
# |   b3 arena@0 f32[2, 8, 6, 6] 'avg_pool2d_0'
# |   b4 arena@18432 f32[2, 8, 12, 12] 'maximum_1'
# |   b5 arena@9216 f32[2, 8, 12, 12] 'res/conv1/maximum_0'
# |   b6 arena@0 f32[2, 8, 12, 12] 'maximum_0'
# |   b7 input f32[2, 3, 12, 12] 'image'
# |   b8 constant f32[8, 3, 3, 3] 'stem/weight/scaled'
# |   b9 constant f32[8, 8, 3, 3] 'res/conv1/weight'
# |   b10 constant f32[8, 8, 3, 3] 'res/conv2/weight'
# |   b11 constant f32[8, 4] 'head/weight'
# | kernels:
# |   k0 conv2d -> b6  (stem_bn/mul_0, maximum_0)
# |     conv2d(b7, b8) dilation=[1,1], groups=1, padding=[1,1,1,1], stride=[1,1]
# |     epilogue:
# |     %0 = acc
# |     %1 = const 0:f32
# |     %2 = maximum %0, %1  <- result
# |   k1 conv2d -> b5  (res/conv1/conv2d_0, res/conv1/maximum_0)
# |     conv2d(b6, b9) dilation=[1,1], groups=1, padding=[1,1,1,1], stride=[1,1]
# |     epilogue:
# |     %0 = acc
# |     %1 = const 0:f32
# |     %2 = maximum %0, %1  <- result
# |   k2 conv2d -> b4  (res/conv2/conv2d_0, add_0, maximum_1)
# |     conv2d(b5, b10) dilation=[1,1], groups=1, padding=[1,1,1,1], stride=[1,1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b6[1152*i0 + 144*i1 + 12*i2 + i3]
# |     %2 = add %0, %1
# |     %3 = const 0:f32
# |     %4 = maximum %2, %3  <- result
# |   k3 avg_pool2d -> b3  (avg_pool2d_0)
# |     avg_pool2d(b4) count_include_pad=false, window={ceil_mode:false,dilation:[1,1],kernel:[2,2],padding:[0,0,0,0],stride:[2,2]}
# |   k4 reduce_sum -> b2  (reduce_sum_0)
# |     loop [16, 36] reduce axes [1]
# |     %0 = load b3[36*i0 + i1]  <- result
# |   k5 elementwise -> b1  (mul_0)
# |     loop [16, 1]
# |     %0 = load b2[i0]
# |     %1 = const 0.02777777798473835:f32
# |     %2 = mul %0, %1  <- result
# |   k6 matmul -> b0  (reshape_0, head/matmul_0)
# |     batch [] m=2 n=4 k=8; a b1+0 strides [8, 1]; b b11+0 strides [4, 1]
# | outputs: b0
# | memory: arena 27648 B, liveness lower bound 27648 B, unplanned 30080 B, results 32 B
