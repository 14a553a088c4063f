"""The peaks space: MATLAB's peaks on [-3, 3]^2, the GIDN seed's demonstration problem."""
