; pass: fold_constants
# Arithmetic on constants becomes one constant; the placeholder's use stays.
x = placeholder{dtype=f32, shape=[n,4]} : f32[n,4]
two = constant{value=[2.0]} : f32[]
three = constant{value=[3.0]} : f32[]
five = add(two, three) : f32[]
y = mul(x, five) : f32[n,4]
outputs: y
# check: five = constant{value=[5.0]} : f32[]
# check-next: y = mul(x, five) : f32[n,4]
# check-not: add(
