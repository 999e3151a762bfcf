; pass: fold_constants
# Nothing that depends on a fed value folds.
x = placeholder{dtype=f32, shape=[3]} : f32[3]
e = exp(x) : f32[3]
one = constant{value=[1.0]} : f32[]
y = add(e, one) : f32[3]
outputs: y
# check: e = exp(x) : f32[3]
# check: y = add(e, one) : f32[3]
# check-count: 4 =
