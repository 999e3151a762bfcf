; pass: fold_constants
# A costly function (cos) of constants grown past the growth cap is folded
# (a rotary table), but a cheap broadcast of a scalar is not materialized.
# (passes.rs checks the folded values against the reference.)
pos = constant{value=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0, 31.0, 32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0, 39.0, 40.0, 41.0, 42.0, 43.0, 44.0, 45.0, 46.0, 47.0]} : f32[1,48,1]
freq = constant{value=[1.0, 0.5, 0.33333334, 0.25, 0.2, 0.16666667, 0.14285715, 0.125]} : f32[8]
angles = mul(pos, freq) : f32[1,48,8]
cat = concat{axis=2}(angles, angles) : f32[1,48,16]
table = cos(cat) : f32[1,48,16]
two = constant{value=[2.0]} : f32[]
wide = broadcast{shape=[64,64]}(two) : f32[64,64]
outputs: table, wide
# check-count: 1 table = constant : f32[1,48,16]
# check-count: 1 wide = broadcast{shape=[64,64]}(two) : f32[64,64]
# check-not: cos(
