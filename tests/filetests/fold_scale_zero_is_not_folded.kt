; pass: fold_scale_into_contraction, fold_constants, eliminate_dead_code
# (x @ w) * 0 is NaN where x @ w overflows; x @ (w * 0) would be 0: not folded.
x = placeholder{dtype=f32, shape=[1,2]} : f32[1,2]
w = constant{value=[1e30, 1.0, 1e30, 1.0]} : f32[2,2]
k = constant{value=[0.0, 2.0]} : f32[2]
m = matmul(x, w) : f32[1,2]
y = mul(m, k) : f32[1,2]
outputs: y
# check: m = matmul(x, w) : f32[1,2]
# check-next: y = mul(m, k) : f32[1,2]
