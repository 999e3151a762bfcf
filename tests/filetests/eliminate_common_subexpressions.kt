; pass: eliminate_common_subexpressions, eliminate_dead_code
# Two equal exps of the same input become one.
x = placeholder{dtype=f32, shape=[8]} : f32[8]
a = exp(x) : f32[8]
b = exp(x) : f32[8]
y = add(a, b) : f32[8]
outputs: y
# check: a = exp(x)
# check-next: y = add(a, a) : f32[8]
# check-count: 1 exp(
