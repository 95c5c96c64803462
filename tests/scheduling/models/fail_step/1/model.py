class TritonPythonModel:
    def execute(self, requests):
        raise RuntimeError("step exploded")
