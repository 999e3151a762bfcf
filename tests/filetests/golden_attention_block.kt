; model: attention_block
; dump-after: plan_memory batch=1
# pre-norm transformer block (4 heads, d 16, seq 6, FFN 32, GELU), batch 1 (the kernel program after planning; was tests/golden/attention_block.txt)
# check: kernels:
# expect:
# | buffers:
# |   b0 result f32[1, 6, 16] 'out'
# |   b1 arena@0 f32[1, 6, 32] 'ffn1/mul_2'
# |   b2 arena@1152 f32[1, 6, 16] 'ln2/add_1'
# |   b3 arena@0 f32[1, 6, 1] 'ln2/reduce_sum_0'
# |   b4 arena@768 f32[1, 6, 16] 'add_0'
# |   b5 arena@384 f32[1, 6, 16] 'attn/reshape_3'
# |   b6 arena@0 f32[1, 4, 6, 4] 'attn/matmul_1'
# |   b7 arena@576 f32[1, 4, 6, 6] 'attn/div_0'
# |   b8 arena@1536 f32[1, 4, 6, 1] 'attn/reduce_max_0'
# |   b9 arena@0 f32[1, 4, 6, 6] 'attn/mul_0'
# |   b10 arena@1152 f32[1, 6, 16] 'attn/v/add_0'
# |   b11 arena@1344 f32[1, 6, 16] 'attn/k/add_0'
# |   b12 arena@960 f32[1, 6, 16] 'attn/q/add_0'
# |   b13 arena@576 f32[1, 6, 16] 'ln1/add_1'
# |   b14 arena@0 f32[1, 6, 1] 'ln1/reduce_sum_0'
# |   b15 input f32[1, 6, 16] 'tokens'
# |   b16 variable f32[16] 'ln1/gamma'
# |   b17 variable f32[16] 'ln1/beta'
# |   b18 variable f32[16, 16] 'attn/q/weight'
# |   b19 variable f32[16] 'attn/q/bias'
# |   b20 variable f32[16, 16] 'attn/k/weight'
# |   b21 variable f32[16] 'attn/k/bias'
# |   b22 variable f32[16, 16] 'attn/v/weight'
# |   b23 variable f32[16] 'attn/v/bias'
# |   b24 variable f32[16, 16] 'attn/out/weight'
# |   b25 variable f32[16] 'attn/out/bias'
# |   b26 variable f32[16] 'ln2/gamma'
# |   b27 variable f32[16] 'ln2/beta'
# |   b28 variable f32[16, 32] 'ffn1/weight'
# |   b29 variable f32[32] 'ffn1/bias'
# |   b30 variable f32[32, 16] 'ffn2/weight'
# |   b31 variable f32[16] 'ffn2/bias'
# | kernels:
# |   k0 reduce_sum -> b14  (ln1/reduce_sum_0)
# |     loop [6, 16] reduce axes [1]
# |     %0 = load b15[16*i0 + i1]  <- result
# |   k1 reduce_sum+map -> b13  (ln1/mul_0, ln1/sub_0, ln1/mul_1, ln1/reduce_sum_1, ln1/mul_2, ln1/add_0, ln1/rsqrt_0, ln1/mul_3, ln1/mul_4, ln1/add_1)
# |     loop [6, 16] reduce axes [1]
# |     %0 = load b15[16*i0 + i1]
# |     %1 = load b14[i0]
# |     %2 = const 0.0625:f32
# |     %3 = mul %1, %2
# |     %4 = sub %0, %3
# |     %5 = mul %4, %4  <- result
# |     map:
# |     %0 = load b15[16*i0 + i1]
# |     %1 = load b14[i0]
# |     %2 = const 0.0625:f32
# |     %3 = mul %1, %2
# |     %4 = sub %0, %3
# |     %5 = acc
# |     %6 = mul %5, %2
# |     %7 = const 0.000009999999747378752:f32
# |     %8 = add %6, %7
# |     %9 = rsqrt %8
# |     %10 = mul %4, %9
# |     %11 = load b16[i1]
# |     %12 = mul %10, %11
# |     %13 = load b17[i1]
# |     %14 = add %12, %13  <- result
# |   k2 matmul -> b12  (attn/q/matmul_0, attn/q/add_0)
# |     batch [] m=6 n=16 k=16; a b13+0 strides [16, 1]; b b18+0 strides [16, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b19[i2]
# |     %2 = add %0, %1  <- result
# |   k3 matmul -> b11  (attn/k/matmul_0, attn/k/add_0)
# |     batch [] m=6 n=16 k=16; a b13+0 strides [16, 1]; b b20+0 strides [16, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b21[i2]
# |     %2 = add %0, %1  <- result
# |   k4 matmul -> b9  (attn/reshape_0, attn/permute_0, attn/reshape_1, attn/permute_3, attn/matmul_0, attn/mul_0)
# |     batch [1, 4] m=6 n=6 k=4; a b12+0 strides [0, 4, 16, 1]; b b11+0 strides [0, 4, 1, 16]
# |     epilogue:
# |     %0 = acc
# |     %1 = const 0.5:f32
# |     %2 = mul %0, %1  <- result
# |   k5 matmul -> b10  (attn/v/matmul_0, attn/v/add_0)
# |     batch [] m=6 n=16 k=16; a b13+0 strides [16, 1]; b b22+0 strides [16, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b23[i2]
# |     %2 = add %0, %1  <- result
# |   k6 reduce_max -> b8  (attn/reduce_max_0)
# |     loop [24, 6] reduce axes [1]
# |     %0 = load b9[6*i0 + i1]  <- result
# |   k7 reduce_sum+map -> b7  (attn/sub_0, attn/exp_0, attn/reduce_sum_0, attn/div_0)
# |     loop [24, 6] reduce axes [1]
# |     %0 = load b9[6*i0 + i1]
# |     %1 = load b8[i0]
# |     %2 = sub %0, %1
# |     %3 = exp %2  <- result
# |     map:
# |     %0 = load b9[6*i0 + i1]
# |     %1 = load b8[i0]
# |     %2 = sub %0, %1
# |     %3 = exp %2
# |     %4 = acc
# |     %5 = div %3, %4  <- result
# |   k8 matmul -> b6  (attn/reshape_2, attn/permute_2, attn/matmul_1)
# |     batch [1, 4] m=6 n=4 k=6; a b7+0 strides [0, 36, 6, 1]; b b10+0 strides [0, 4, 16, 1]
# |   k9 elementwise -> b5  (attn/permute_4, attn/reshape_3)
# |     loop [6, 4, 4]
# |     %0 = load b6[4*i0 + 24*i1 + i2]  <- result
# |   k10 matmul -> b4  (attn/out/matmul_0, attn/out/add_0, add_0)
# |     batch [] m=6 n=16 k=16; a b5+0 strides [16, 1]; b b24+0 strides [16, 1]
# |     epilogue:
# |     %0 = load b15[16*i1 + i2]
# |     %1 = acc
# |     %2 = load b25[i2]
# |     %3 = add %1, %2
# |     %4 = add %0, %3  <- result
# |   k11 reduce_sum -> b3  (ln2/reduce_sum_0)
# |     loop [6, 16] reduce axes [1]
# |     %0 = load b4[16*i0 + i1]  <- result
# |   k12 reduce_sum+map -> b2  (ln2/mul_0, ln2/sub_0, ln2/mul_1, ln2/reduce_sum_1, ln2/mul_2, ln2/add_0, ln2/rsqrt_0, ln2/mul_3, ln2/mul_4, ln2/add_1)
# |     loop [6, 16] reduce axes [1]
# |     %0 = load b4[16*i0 + i1]
# |     %1 = load b3[i0]
# |     %2 = const 0.0625:f32
# |     %3 = mul %1, %2
# |     %4 = sub %0, %3
# |     %5 = mul %4, %4  <- result
# |     map:
# |     %0 = load b4[16*i0 + i1]
# |     %1 = load b3[i0]
# |     %2 = const 0.0625:f32
# |     %3 = mul %1, %2
# |     %4 = sub %0, %3
# |     %5 = acc
# |     %6 = mul %5, %2
# |     %7 = const 0.000009999999747378752:f32
# |     %8 = add %6, %7
# |     %9 = rsqrt %8
# |     %10 = mul %4, %9
# |     %11 = load b26[i1]
# |     %12 = mul %10, %11
# |     %13 = load b27[i1]
# |     %14 = add %12, %13  <- result
# |   k13 matmul -> b1  (ffn1/matmul_0, ffn1/add_0, ffn1/mul_0, ffn1/erf_0, ffn1/add_1, ffn1/mul_1, ffn1/mul_2)
# |     batch [] m=6 n=32 k=16; a b2+0 strides [16, 1]; b b28+0 strides [32, 1]
# |     epilogue:
# |     %0 = acc
# |     %1 = load b29[i2]
# |     %2 = add %0, %1
# |     %3 = const 0.5:f32
# |     %4 = mul %2, %3
# |     %5 = const 0.7071067690849304:f32
# |     %6 = mul %2, %5
# |     %7 = erf %6
# |     %8 = const 1:f32
# |     %9 = add %7, %8
# |     %10 = mul %4, %9  <- result
# |   k14 matmul -> b0  (ffn2/matmul_0, ffn2/add_0, out)
# |     batch [] m=6 n=16 k=32; a b1+0 strides [32, 1]; b b30+0 strides [16, 1]
# |     epilogue:
# |     %0 = load b4[16*i1 + i2]
# |     %1 = acc
# |     %2 = load b31[i2]
# |     %3 = add %1, %2
# |     %4 = add %0, %3  <- result
# | outputs: b0
# | memory: arena 1728 B, liveness lower bound 1728 B, unplanned 5248 B, results 384 B
