; pass: fold_constants
# A large uniform constant folds through exp and stays a splat.
zeros = constant{value=splat(0.0)} : f32[16]
e = exp(zeros) : f32[16]
x = placeholder{dtype=f32, shape=[16]} : f32[16]
y = add(x, e) : f32[16]
outputs: y
# check: e = constant{value=splat(1.0)} : f32[16]
# check-not: exp(
# check: y = add(x, e)
