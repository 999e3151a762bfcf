; dump-after: plan_memory
# Two matmul operands live at once: both in the arena, at different offsets.
x = placeholder{dtype=f32, shape=[4,8]} : f32[4,8]
w = constant{value=splat(0.5)} : f32[8,8]
a = exp(x) : f32[4,8]
p = matmul(a, w) : f32[4,8]
s = sin(x) : f32[4,8]
q = matmul(s, w) : f32[4,8]
y = add(p, q) : f32[4,8]
outputs: y
# check: arena@0
# check: arena@128
# check: memory: arena
