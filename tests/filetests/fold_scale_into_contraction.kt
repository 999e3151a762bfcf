; pass: fold_scale_into_contraction, fold_constants, eliminate_dead_code
# (x @ w) * k with constant w and k becomes x @ (w * k).
x = placeholder{dtype=f32, shape=[1,2]} : f32[1,2]
w = constant{value=[1.0, 2.0, 3.0, 4.0]} : f32[2,2]
k = constant{value=[2.0, 0.5]} : f32[2]
m = matmul(x, w) : f32[1,2]
y = mul(m, k) : f32[1,2]
outputs: y
# check: constant{value=[2.0, 1.0, 6.0, 2.0]} : f32[2,2]
# check: matmul(x,
# check-not: mul(
