; pass: pipeline
# Transpose twice and reshape there and back are the identity.
x = placeholder{dtype=f32, shape=[n,4]} : f32[n,4]
t1 = permute{perm=[1,0]}(x) : f32[4,n]
t2 = permute{perm=[1,0]}(t1) : f32[n,4]
r1 = reshape{shape=[n,2,2]}(t2) : f32[n,2,2]
r2 = reshape{shape=[n,4]}(r1) : f32[n,4]
z = exp(r2) : f32[n,4]
outputs: z
# check: z = exp(x) : f32[n,4]
# check-not: permute
# check-not: reshape
