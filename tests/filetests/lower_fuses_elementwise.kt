; dump-after: lower n=2
# exp, mul and the bias add fuse into one elementwise kernel.
x = placeholder{dtype=f32, shape=[n,4]} : f32[n,4]
b = placeholder{dtype=f32, shape=[4]} : f32[4]
e = exp(x) : f32[n,4]
m = mul(e, x) : f32[n,4]
y = add(m, b) : f32[n,4]
outputs: y
# check: buffers:
# check: kernels:
# check-next: k0 elementwise
# check-count: 1 elementwise
# check: outputs: b
