package org.coinvision.sdk
const val SDK_VERSION = "0.1.0"
