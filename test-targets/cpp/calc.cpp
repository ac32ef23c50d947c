// cpp_calc: C++ methods to patch by their demangled names.
//   call N -> "method N R"   R = ns::Calc::method(N) = N+5   (fix_cpp.so: N*500)
//   area N -> "area N R"     R = geo::Square::area(N) const = 9*N   (fix_cpp.so: N*1000)
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <unistd.h>

namespace ns {
struct Calc {
    int base;
    int method(int x);
};

static volatile long method_calls;

__attribute__((noipa)) int Calc::method(int x) {
    method_calls = method_calls + 1;
    return x + base;
}
} // namespace ns

namespace geo {
struct Square {
    int side;
    int area(int scale) const;
};

__attribute__((noipa)) int Square::area(int scale) const { return side * side * scale; }
} // namespace geo

int main() {
    std::cout << "ready " << getpid() << std::endl;
    std::string line;
    ns::Calc calc{5};
    ns::Calc *volatile c = &calc;
    geo::Square square{3};
    geo::Square *volatile sq = &square;
    while (std::getline(std::cin, line) && line != "quit") {
        if (line.rfind("call ", 0) == 0) {
            volatile int n = std::stoi(line.substr(5));
            int r = c->method(n);
            std::cout << "method " << n << " " << r << std::endl;
        } else if (line.rfind("area ", 0) == 0) {
            volatile int n = std::stoi(line.substr(5));
            int r = sq->area(n);
            std::cout << "area " << n << " " << r << std::endl;
        } else {
            std::cout << "error unknown command: " << line << std::endl;
        }
    }
    return 0;
}
