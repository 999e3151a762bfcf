; pass: pipeline
# x * 1 + 0, neg(neg(.)), transpose twice, reshape there and back, a constant
# sum and an unused exp: what is left is z = x * 5.
x = placeholder{dtype=f32, shape=[n,4]} : f32[n,4]
one = constant{value=[1.0]} : f32[]
zero = constant{value=[0.0]} : f32[]
a = mul(x, one) : f32[n,4]
b = add(a, zero) : f32[n,4]
c = neg(b) : f32[n,4]
d = neg(c) : f32[n,4]
t1 = permute{perm=[1,0]}(d) : f32[4,n]
t2 = permute{perm=[1,0]}(t1) : f32[n,4]
r1 = reshape{shape=[n,2,2]}(t2) : f32[n,2,2]
r2 = reshape{shape=[n,4]}(r1) : f32[n,4]
two = constant{value=[2.0]} : f32[]
three = constant{value=[3.0]} : f32[]
five = add(two, three) : f32[]
z = mul(r2, five) : f32[n,4]
unused = exp(x) : f32[n,4]
outputs: z
# check-count: 3 =
# check: value=[5.0]
# check: z = mul(x,
# check-next: outputs: z
