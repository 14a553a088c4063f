"""The lattice space (Deep-DRAM): 42-beam random networks, frame FE, tilings, homogenisation, datasets."""
