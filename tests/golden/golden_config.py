"""A config class for golden case (e): its instances pickle as `golden_config.GoldenConfig`
(NEWOBJ + BUILD with the attribute dict), the way upstream's int4 checkpoint pickles
`models.config.IteraLiteConfig`. The converter must read it without importing anything."""


class GoldenConfig:
    def __init__(self, **fields):
        self.__dict__.update(fields)
