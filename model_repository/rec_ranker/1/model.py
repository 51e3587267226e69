from shopsearch.serving.python_backend import TritonStepModel


class TritonPythonModel(TritonStepModel):
    step_name = "ranker"
