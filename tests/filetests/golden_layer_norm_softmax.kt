; model: layer_norm
; dump-after: plan_memory batch=2
# layer_norm (2 kernels) then softmax (2 kernels), batch 2 (the kernel program after planning; was tests/golden/layer_norm_softmax.txt)
# check-count: 2 reduce_sum+map ->
# check-count: 4 -> b
# expect:
# | buffers:
# |   b0 result f32[2, 10] 'probs'
# |   b1 arena@128 f32[2, 1] 'reduce_max_0'
# |   b2 arena@0 f32[2, 10] 'ln/add_1'
# |   b3 arena@128 f32[2, 1] 'ln/reduce_sum_0'
# |   b4 input f32[2, 10] 'x'
# |   b5 variable f32[10] 'ln/gamma'
# |   b6 variable f32[10] 'ln/beta'
# | kernels:
# |   k0 reduce_sum -> b3  (ln/reduce_sum_0)
# |     loop [2, 10] reduce axes [1]
# |     %0 = load b4[10*i0 + i1]  <- result
# |   k1 reduce_sum+map -> b2  (ln/mul_0, ln/sub_0, ln/mul_1, ln/reduce_sum_1, ln/mul_2, ln/add_0, ln/rsqrt_0, ln/mul_3, ln/mul_4, ln/add_1)
# |     loop [2, 10] reduce axes [1]
# |     %0 = load b4[10*i0 + i1]
# |     %1 = load b3[i0]
# |     %2 = const 0.10000000149011612:f32
# |     %3 = mul %1, %2
# |     %4 = sub %0, %3
# |     %5 = mul %4, %4  <- result
# |     map:
# |     %0 = load b4[10*i0 + i1]
# |     %1 = load b3[i0]
# |     %2 = const 0.10000000149011612:f32
# |     %3 = mul %1, %2
# |     %4 = sub %0, %3
# |     %5 = acc
# |     %6 = mul %5, %2
# |     %7 = const 0.000009999999747378752:f32
# |     %8 = add %6, %7
# |     %9 = rsqrt %8
# |     %10 = mul %4, %9
# |     %11 = load b5[i1]
# |     %12 = mul %10, %11
# |     %13 = load b6[i1]
# |     %14 = add %12, %13  <- result
# |   k2 reduce_max -> b1  (reduce_max_0)
# |     loop [2, 10] reduce axes [1]
# |     %0 = load b2[10*i0 + i1]  <- result
# |   k3 reduce_sum+map -> b0  (sub_0, exp_0, reduce_sum_0, probs)
# |     loop [2, 10] reduce axes [1]
# |     %0 = load b2[10*i0 + i1]
# |     %1 = load b1[i0]
# |     %2 = sub %0, %1
# |     %3 = exp %2  <- result
# |     map:
# |     %0 = load b2[10*i0 + i1]
# |     %1 = load b1[i0]
# |     %2 = sub %0, %1
# |     %3 = exp %2
# |     %4 = acc
# |     %5 = div %3, %4  <- result
# | outputs: b0
# | memory: arena 192 B, liveness lower bound 192 B, unplanned 256 B, results 80 B
