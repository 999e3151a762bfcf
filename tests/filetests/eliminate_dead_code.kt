; pass: eliminate_dead_code
# What no output needs is dropped; outputs stay.
x = placeholder{dtype=f32, shape=[8]} : f32[8]
unused = exp(x) : f32[8]
also_unused = sin(unused) : f32[8]
y = neg(x) : f32[8]
outputs: y
# check: x = placeholder
# check-next: y = neg(x)
# check-next: outputs: y
# check-not: unused
