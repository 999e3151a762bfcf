; pass: freeze_variables
# A variable nothing assigns becomes a constant (inference).
x = placeholder{dtype=f32, shape=[4]} : f32[4]
w = variable : f32[4]
y = mul(x, w) : f32[4]
outputs: y
# check: w = constant{value=[0.0, 0.0, 0.0, 0.0]} : f32[4]
# check-not: variable
