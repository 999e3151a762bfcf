; pass: simplify_algebra, eliminate_dead_code
# x + 0 where 0 broadcasts x to a larger shape is not x: the add stays.
x = placeholder{dtype=f32, shape=[4]} : f32[4]
zeros = constant{value=splat(0.0)} : f32[3,4]
y = add(x, zeros) : f32[3,4]
outputs: y
# check: y = add(x, zeros) : f32[3,4]
