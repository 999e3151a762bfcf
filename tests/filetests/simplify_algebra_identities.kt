; pass: simplify_algebra, eliminate_dead_code
# x * 1, x + 0 and neg(neg(x)) are x.
x = placeholder{dtype=f32, shape=[n,4]} : f32[n,4]
one = constant{value=[1.0]} : f32[]
zero = constant{value=[0.0]} : f32[]
a = mul(x, one) : f32[n,4]
b = add(a, zero) : f32[n,4]
c = neg(b) : f32[n,4]
d = neg(c) : f32[n,4]
z = exp(d) : f32[n,4]
outputs: z
# check: x = placeholder
# check-next: z = exp(x) : f32[n,4]
# check-not: neg
# check-count: 0 mul(
